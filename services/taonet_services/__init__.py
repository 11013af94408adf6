"""taonet services: the domain service, secret server and quote service."""
