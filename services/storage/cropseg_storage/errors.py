"""Errors of the storage service; the HTTP status and machine-readable code sit on each class.

Besides these, image decoding errors (``cropseg_core.imaging``) answer 400/413/415 and the
shared ``cropseg_core.web.errors`` classes cover authentication, bodies and gateways.
"""

from __future__ import annotations

from cropseg_core.web.errors import ClientError, ConflictError, NotFoundError


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class InvalidIdError(ClientError):
    code = "invalid_id"


class InvalidCursorError(ClientError):
    code = "invalid_cursor"


class LabelSizeMismatchError(ClientError):
    code = "label_size_mismatch"


class NoLabelError(ConflictError):
    code = "no_label"


class NoSegmentationError(ConflictError):
    code = "no_segmentation"
