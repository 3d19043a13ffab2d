"""OpenAI-style errors: every failure the endpoint answers is a JSON body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status, as OpenAI's own API
sends, so official clients raise their usual exception types (400 -> BadRequestError...)."""

from __future__ import annotations

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER = "server_error"
UNAVAILABLE = "service_unavailable_error"


class ApiError(Exception):
    """A request the endpoint answers with an error body instead of a completion."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


class RouteFailed(Exception):
    """A target could not complete a request for a reason another target might not share (no
    worker answered, the upstream is down or overloaded): the next fallback is tried."""
