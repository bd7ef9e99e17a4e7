"""Hardening tools: a live server in a subprocess, `python -m hardening fuzz|soak`.

Traffic goes only to 127.0.0.0/8 and ::1; every loop is bounded in count and time.
"""
