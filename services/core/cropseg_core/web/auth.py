"""Bearer-token protection of writes: one check for every service that has writes."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr

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
