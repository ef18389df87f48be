"""cropseg model pipeline: data, baselines, networks, training, ONNX export, evaluation."""
