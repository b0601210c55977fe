"""What the server answers over HTTP: the browser pages, the JSON API and its
login, and the resumable-upload endpoints (docs/architecture.md)."""
