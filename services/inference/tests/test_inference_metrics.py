from __future__ import annotations

import re

import pytest
from cropseg_inference.main import create_app
from fastapi.testclient import TestClient
from inference_testing import MODEL_VERSION, make_settings, wait_ready
from prometheus_client import CollectorRegistry


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    return 0.0


@pytest.mark.slow
def test_metrics_follow_real_requests(field_png: bytes) -> None:
    with TestClient(create_app(make_settings(), CollectorRegistry())) as client:
        wait_ready(client)
        for _ in range(3):
            assert (
                client.post(
                    "/api/v1/segment", content=field_png, headers={"content-type": "image/png"}
                ).status_code
                == 200
            )
        assert (
            client.post("/api/v1/segment", content=b"nope", headers={"content-type": "image/png"}).status_code
            == 415
        )
        text = client.get("/metrics").text

    handler = "/api/v1/segment"
    assert sample(text, "http_requests_total", handler=handler, method="POST", status="200") == 3
    assert sample(text, "http_requests_total", handler=handler, method="POST", status="415") == 1
    assert sample(text, "http_request_duration_seconds_count", handler=handler, method="POST") == 4
    assert sample(text, "http_request_size_bytes_sum", handler=handler) == 3 * len(field_png) + 4
    assert sample(text, "http_response_size_bytes_count", handler=handler) == 4
    assert sample(text, "http_requests_inprogress", handler=handler, method="POST") == 0
    assert sample(text, "cropseg_segmentation_result_total", result="success") == 3
    assert sample(text, "cropseg_segmentation_result_total", result="failure") == 1
    for stage in ("decode", "preprocess", "queue", "infer", "postprocess", "encode"):
        assert sample(text, "cropseg_inference_stage_duration_seconds_count", stage=stage) == 3
    assert sample(text, "cropseg_inference_stage_duration_seconds_sum", stage="infer") > 0.01
    assert sample(text, "cropseg_inference_batch_size_count") == 3 + 1  # + the warm-up run
    assert sample(text, "cropseg_vegetation_fraction_count") == 3
    assert 0 < sample(text, "cropseg_vegetation_fraction_sum") < 3
    assert sample(text, "cropseg_inference_queue_depth") == 0
    assert sample(text, "cropseg_inference_rejected_total") == 0
    assert sample(text, "cropseg_inference_ready") == 1
    info = [line for line in text.splitlines() if line.startswith("cropseg_model_info{")]
    assert len(info) == 1
    assert f'version="{MODEL_VERSION}"' in info[0]
    assert info[0].endswith(" 1.0")
