"""The status page's template and style sheet (package data; no JavaScript, nothing fetched)."""
