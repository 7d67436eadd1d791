"""Meeting mode: turns, live and offline clustering, naming, guests and RTTM."""
