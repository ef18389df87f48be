"""The Open Inference Protocol v2 (the KServe / Triton / MLServer REST API), apart from HTTP.

:mod:`~cropseg_inference.oip.types` holds its wire types (pydantic models of the JSON it sends
and receives), :mod:`~cropseg_inference.oip.codec` turns a request body into images and
segmentations into a response body. Neither imports the web framework; the routes
(:mod:`cropseg_inference.routes.v2`) only parse, segment and encode.
"""
