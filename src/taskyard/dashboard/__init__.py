"""The browser dashboard's files (index.html, scripts, styles), served by
`taskyard.api.routes.dashboard` at `/dashboard`. No Python here."""
