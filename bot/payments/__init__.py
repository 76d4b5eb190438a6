"""Payment providers: Telegram Payments, WeChat Pay API v3 and the demo's sandbox."""
