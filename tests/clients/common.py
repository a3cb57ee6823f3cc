"""What the client scripts share."""

from tritonclient.utils import InferenceServerException


def error_of(call):
    """The status and message of the InferenceServerException `call` raises, or None."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return None
