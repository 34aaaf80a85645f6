"""The run report: report.json (the numbers) and report.html (tables and plots)."""
