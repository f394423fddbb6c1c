"""Networks written as a user of the project writes them, outside its packages (docs/configs.md, "Adding a network")."""
