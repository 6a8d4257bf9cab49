"""The REST API's bearer token: refused outright until FORGECREW_API_TOKEN is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.settings import Settings

# auto_error=False: this module answers a missing token itself (401 with WWW-Authenticate), and
# the scheme still appears in OpenAPI as the "bearer" security scheme of every API operation.
bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="The value of FORGECREW_API_TOKEN, as `Authorization: Bearer <token>`.")

NOT_CONFIGURED = ("the REST API is disabled: set FORGECREW_API_TOKEN on the coordinator "
                  "(e.g. `openssl rand -hex 32`) and send it as `Authorization: Bearer <token>`")
API_ACTOR = "api"


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def check_bearer(settings: Settings, setting: str, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Raise 401 unless `credentials` carry the token held in `setting` (which must be set)."""
    if credentials is None or not token_matches(credentials.credentials, settings.secret(setting)):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The API's gate; returns the actor name recorded for what the caller does."""
    settings: Settings = request.app.state.services.settings
    if not settings.is_set("api_token"):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=NOT_CONFIGURED)
    check_bearer(settings, "api_token", credentials)
    return API_ACTOR


Actor = Annotated[str, Depends(require_token)]
