"""The ground floor: documents, manifests, options, hardware and the other torch-free helpers (and signing)."""
