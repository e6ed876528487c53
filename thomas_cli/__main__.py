"""`python -m thomas_cli` == `thomas`."""
from thomas_cli.main import main

main()
