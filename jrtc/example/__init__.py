"""The built-in example: a small byte-level JRT-RNN trained on a synthetic key-value recall task.

``recall.pt`` is the trained checkpoint, ``settings.json`` the model and training settings, ``train.py``
the script that made it (``python -m jrtc.example.train``) and ``evaluate.py`` its accuracy check.
"""

from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
CHECKPOINT = EXAMPLE_DIR / "recall.pt"
SETTINGS = EXAMPLE_DIR / "settings.json"
