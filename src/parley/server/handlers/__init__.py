"""The rules: accounts, devices, keys, messages, groups, attachments, delivery."""
