//! Products.

use super::{RowExt, Store, StoreError, parse_stored};
use crate::domain::{Currency, Money, Product, Sku};

macro_rules! product_columns {
    () => {
        "sku, name, price_cents, currency"
    };
}

fn product_from_row(row: &impl RowExt) -> Result<Product, StoreError> {
    let sku = row.text("sku")?;
    let currency = row.text("currency")?;
    Ok(Product {
        sku: parse_stored("sku", &sku, Sku::parse)?,
        name: row.text("name")?,
        price: Money {
            cents: row.int("price_cents")?,
            currency: parse_stored("currency", &currency, Currency::parse)?,
        },
    })
}

impl Store {
    /// Every product, by SKU.
    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        with_read!(self, |conn| {
            let sql = concat!("SELECT ", product_columns!(), " FROM products ORDER BY sku");
            let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
            rows.iter().map(product_from_row).collect::<Result<Vec<_>, _>>()
        })
    }

    /// One product.
    pub async fn product(&self, sku: &Sku) -> Result<Option<Product>, StoreError> {
        with_read!(self, |conn| {
            let sql = concat!("SELECT ", product_columns!(), " FROM products WHERE sku = $1");
            let row = sqlx::query(sql).bind(sku.as_str()).fetch_optional(&mut *conn).await?;
            row.as_ref().map(product_from_row).transpose()
        })
    }

    /// Inserts or updates `products` in one transaction: all of them or none.
    pub async fn upsert_products(&self, products: &[Product], now_ms: i64) -> Result<(), StoreError> {
        with_tx!(self, |tx| {
            for product in products {
                sqlx::query(
                    "INSERT INTO products (sku, name, price_cents, currency, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, \
                     currency = excluded.currency, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(product.sku.as_str())
                .bind(&product.name)
                .bind(product.price.cents)
                .bind(product.price.currency.as_str())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            Ok::<_, StoreError>(())
        })
    }
}
