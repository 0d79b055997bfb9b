"""Command-line faces of medcbir (click). Thin: parse, call the API, print."""
