"""Model card templates (Jinja + Markdown, YAML front matter), read by `hf_ssl.hub.cards`."""
