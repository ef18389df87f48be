"""cropseg drift monitor: is recent input still like the data the model was trained on?"""

import os

SERVICE_NAME = "cropseg-drift-monitor"

# Alibi Detect imports transformers, which announces at import that no deep-learning framework is
# installed ("None of PyTorch, TensorFlow >= 2.0, or Flax have been found..."): the monitor never
# uses transformers' models, and in a CronJob's log the line reads like an error.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
