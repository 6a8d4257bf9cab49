"""The forge port: where repositories are cloned from and pull requests are opened."""
