"""trr-assets: keeps core.show_assets true to what is really in S3.

Importing the package is cheap: nothing here opens a connection or imports
boto3, psycopg or APScheduler. Each job module imports what it needs.
"""

__version__ = "0.1.0"
