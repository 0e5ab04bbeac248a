"""Reporting: tables and figures from result rows."""
