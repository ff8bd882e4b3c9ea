"""HTTP only: each router parses, authenticates and hands over to the services on `app.state`."""
