"""cropseg model pipeline: data, baselines, U-Net, ONNX export, evaluation."""
