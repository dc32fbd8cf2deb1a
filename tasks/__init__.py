"""Pipeline stages. Each module holds plain typed functions plus the Prefect tasks that wrap them."""
