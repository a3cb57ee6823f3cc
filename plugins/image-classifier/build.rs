//! Turns `imagenet_labels.txt` into a `[&str; 1000]` at build time, so naming the top classes
//! costs an index instead of scanning 22 KB of text on every request.

use std::{env, fs, path::Path};

fn main() {
    println!("cargo::rerun-if-changed=imagenet_labels.txt");
    let text = fs::read_to_string("imagenet_labels.txt").expect("imagenet_labels.txt");
    let labels: Vec<&str> = text.lines().collect();
    let mut out = format!("pub static LABELS: [&str; {}] = [\n", labels.len());
    for label in labels {
        out.push_str(&format!("    {label:?},\n"));
    }
    out.push_str("];\n");
    let path = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("labels.rs");
    fs::write(path, out).expect("labels.rs written");
}
