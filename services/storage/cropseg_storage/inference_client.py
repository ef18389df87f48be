"""The inference service as seen from storage: one call, its failures mapped to clear answers.

connection refused / reset, or  -> 503 inference_unavailable (Retry-After)
  no connection within 5 s (a killed pod's address answers nothing)
inference answers 503 (full)    -> 503 with its Retry-After
no answer within the timeout    -> 504 inference_timeout
inference answers 4xx           -> the same status and its message (the image is refused)
inference answers 5xx or junk   -> 502 inference_failed
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from cropseg_core.contracts import SegmentationHeaders
from cropseg_core.errors import BadGatewayError, ClientError, GatewayTimeoutError, UnavailableError

SEGMENT_PATH = "/api/v1/segment"
log = logging.getLogger(__name__)


class InferenceUnavailableError(UnavailableError):
    code = "inference_unavailable"


class InferenceTimeoutError(GatewayTimeoutError):
    code = "inference_timeout"


class InferenceFailedError(BadGatewayError):
    code = "inference_failed"


class InferenceRejectedError(ClientError):
    """Inference refused the image; status and code are the ones it answered."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"the inference service refused the image: {message}")
        self.status_code = status_code
        self.code = code


@dataclass(frozen=True)
class Segmentation:
    mask_png: bytes
    vegetation_fraction: float
    threshold: float
    model_name: str
    model_version: str
    latency_s: float
    layout: str
    working_scale: float
    confidence: list[list[int]] | None = None
    """Pixels by predicted probability (X-Confidence); None from an inference service without it.
    The fields are what inference's headers say (:class:`cropseg_core.contracts.SegmentationHeaders`)."""


CONNECT_TIMEOUT_S = 5.0
NOT_ANSWERING = (
    "the inference service is not answering (not reachable): it may still be starting, or it has "
    "stopped. Try again in a minute; if this goes on, see which service is down on the Status page "
    "and start it again (locally: make up)."
)
"""For the people who read it in the UI: no address or exception name (the log has those)."""


class InferenceClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        max_connections: int,
        retry_after_s: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_after_s = retry_after_s
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=limits, transport=transport
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def segment(
        self, image: bytes, media_type: str, threshold: float | None = None, **options: str | float | None
    ) -> Segmentation:
        """Send ``image`` to ``POST /api/v1/segment``; the PNG mask and what the headers say.

        ``options`` are passed on as query parameters when set (layout, gsd_mm, scale)."""
        params: dict[str, Any] = {"output": "mask"}
        if threshold is not None:
            params["threshold"] = threshold
        params.update({name: value for name, value in options.items() if value is not None})
        started = time.perf_counter()
        response = await self._send(
            "POST", SEGMENT_PATH, content=image, params=params, headers={"content-type": media_type}
        )
        latency = time.perf_counter() - started
        try:
            answer = SegmentationHeaders.from_headers(response.headers)
        except ValueError as e:
            raise InferenceFailedError(
                f"the inference service answered without the expected headers: {e}"
            ) from e
        return Segmentation(
            mask_png=response.content,
            vegetation_fraction=answer.vegetation_fraction,
            threshold=answer.threshold,
            model_name=answer.model_name,
            model_version=answer.model_version,
            latency_s=latency,
            layout=answer.layout,
            working_scale=answer.working_scale,
            confidence=answer.confidence.tolist() if answer.confidence is not None else None,
        )

    async def ready(self, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
        """Whether inference's /readyz answers 200 within ``timeout_s``, connecting included."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.client.get("/readyz", timeout=timeout_s)
        except (httpx.HTTPError, TimeoutError):
            return False
        return response.status_code == 200

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.ConnectTimeout as e:
            log.warning("no connection to inference at %s within %.0f s", self.base_url, CONNECT_TIMEOUT_S)
            raise InferenceUnavailableError(NOT_ANSWERING, retry_after_s=self.retry_after_s) from e
        except httpx.TimeoutException as e:
            log.warning("inference at %s did not answer in time: %r", self.base_url, e)
            raise InferenceTimeoutError(
                "the inference service did not answer in time: a very large image can take long; "
                "try again, or upload a smaller crop"
            ) from e
        except httpx.TransportError as e:
            log.warning("inference at %s is not reachable: %r", self.base_url, e)
            raise InferenceUnavailableError(NOT_ANSWERING, retry_after_s=self.retry_after_s) from e
        if response.status_code == 503:
            retry_after = response.headers.get("retry-after", str(self.retry_after_s))
            raise InferenceUnavailableError(
                f"the inference service is busy or starting: {_message(response)}",
                retry_after_s=int(retry_after) if retry_after.isdigit() else self.retry_after_s,
            )
        if 400 <= response.status_code < 500:
            code = _error_field(response, "code") or "inference_rejected"
            raise InferenceRejectedError(response.status_code, code, _message(response))
        if response.status_code != 200:
            raise InferenceFailedError(
                f"the inference service failed with {response.status_code}: {_message(response)}"
            )
        return response


def _error_field(response: httpx.Response, field: str) -> str | None:
    try:
        error = response.json().get("error")
    except ValueError:
        return None
    if isinstance(error, dict) and isinstance(error.get(field), str):
        return str(error[field])
    return None


def _message(response: httpx.Response) -> str:
    return _error_field(response, "message") or response.text[:200] or response.reason_phrase
