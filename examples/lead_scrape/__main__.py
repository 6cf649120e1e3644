"""``python -m examples.lead_scrape``: run the lead scrape pipeline once."""

import sys

from examples.lead_scrape.app import main

sys.exit(main())
