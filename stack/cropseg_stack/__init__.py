"""The local stack: every cropseg process on 127.0.0.1, what ``make up`` runs."""
