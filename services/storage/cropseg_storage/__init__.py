"""cropseg storage service: the front door -- images, labels, masks, evaluation, web UI."""

SERVICE_NAME = "cropseg-storage"
