"""Running as a service: sd_notify and the watchdog, metrics and health, log lines, the heap."""
