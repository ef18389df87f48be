"""cropseg drift monitor: is recent input still like the data the model was trained on?"""

SERVICE_NAME = "cropseg-drift-monitor"
