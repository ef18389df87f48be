"""What every cropseg FastAPI service shares: errors, request metrics, body limits, the server.

Installed with the ``service`` extra (``pip install 'cropseg-core[service]'``).
"""
