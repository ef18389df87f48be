"""Bearer-token protection of writes: one check for every service that has writes."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Self

from fastapi import Depends, Header, Request
from pydantic import AfterValidator, BaseModel, SecretStr, model_validator

from cropseg_core.errors import ForbiddenError, UnauthorizedError
from cropseg_core.files import fsync_dir, write_temporary

MIN_TOKEN_LENGTH = 16
log = logging.getLogger(__name__)


def _long_enough(token: SecretStr | None) -> SecretStr | None:
    if token is not None and not token.get_secret_value():
        return None  # an empty variable (compose's ${CROPSEG_API_TOKEN:-}) is no token
    if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"api_token must be at least {MIN_TOKEN_LENGTH} characters (or unset for no authentication)"
        )
    return token


ApiToken = Annotated[SecretStr | None, AfterValidator(_long_enough)]
"""A settings field: the token writes need, or None (or empty) for no authentication."""


def token_from_file(token: SecretStr | None, token_file: Path | None) -> SecretStr | None:
    """``token`` when set; else the one in ``token_file``, generated there on first start.

    Services that share a volume share the token: the first to start creates the file with a
    create-only link (so two starting at once agree on one token), mode 0600; the others read it.
    """
    if token is not None or token_file is None:
        return token
    try:
        if not token_file.exists():
            temporary = write_temporary(token_file, secrets.token_urlsafe(32).encode())
            try:
                os.chmod(temporary, 0o600)
                os.link(temporary, token_file)  # FileExistsError: another service made it first
                fsync_dir(token_file.parent)
                log.warning("generated an API token for writes in %s (read it there)", token_file)
            except FileExistsError:
                pass
            finally:
                temporary.unlink(missing_ok=True)
        value = token_file.read_text().strip()
    except OSError as error:
        raise ValueError(
            f"api_token_file {token_file}: {error.strerror or error}; the folder must be writable by "
            f"this service's user (uid {os.getuid()}), or set the api_token itself"
        ) from error
    checked = _long_enough(SecretStr(value))
    if checked is None:
        raise ValueError(f"api_token_file {token_file} is empty: delete it to have a token generated")
    return checked


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


class TokenSettings(BaseModel):
    """Settings of a service with writes (mixed into its settings class)."""

    api_token: ApiToken = None
    """When set, writes need ``Authorization: Bearer <token>``."""
    api_token_file: Path | None = None
    """Without ``api_token``: read the token from this file, generated there (0600) on first start;
    services sharing the volume share it (compose: ``/data/.cropseg/api-token``)."""

    @model_validator(mode="after")
    def _token_from_file(self) -> Self:
        self.api_token = token_from_file(self.api_token, self.api_token_file)
        return self


def require_token(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` when a token is configured")
    ] = None,
) -> None:
    """Writes need ``Authorization: Bearer <token>`` when the service's token is set."""
    settings: TokenSettings = request.app.state.settings
    check_bearer(settings.api_token, authorization)


WRITE = [Depends(require_token)]
"""A write route's ``dependencies``."""
