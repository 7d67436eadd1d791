"""The work behind single commands: identify, enroll, calibrate, the demo, the doctor."""
