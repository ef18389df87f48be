"""Bearer-token protection of writes: one check for every service that has writes."""

from __future__ import annotations

import hmac
from typing import Annotated

from pydantic import AfterValidator, SecretStr

from cropseg_core.web.errors import ForbiddenError, UnauthorizedError

MIN_TOKEN_LENGTH = 16


def _long_enough(token: SecretStr | None) -> SecretStr | None:
    if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"api_token must be at least {MIN_TOKEN_LENGTH} characters (or unset for no authentication)"
        )
    return token


ApiToken = Annotated[SecretStr | None, AfterValidator(_long_enough)]
"""A settings field: the token writes need, or None for no authentication."""


def check_bearer(expected: SecretStr | None, authorization: str | None) -> None:
    """Pass when no token is configured or ``authorization`` is ``Bearer <expected>``."""
    if expected is None:
        return
    if not authorization:
        raise UnauthorizedError("this request changes data: send Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise ForbiddenError("the token is not valid for this service")
