"""cropseg inference service: segments UAV images with the ONNX U-Net over HTTP."""

SERVICE_NAME = "cropseg-inference"
