//! The catalog file: `{"products": [{sku, name, priceCents, currency, stock}]}`.
//! `checkout catalog import` loads its products; the sandbox inventory takes its
//! stock from the `stock` fields. Every problem in a file is reported at once, and a
//! file with any problem is not used at all.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::domain::money::MAX_PRICE_CENTS;
use crate::domain::{Currency, Money, Product, Sku};

/// The demo catalog, built into the binary.
pub const DEMO_CATALOG: &str = include_str!("../catalog/demo.json");

/// A validated catalog.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Products, in file order.
    pub products: Vec<Product>,
    /// Units in stock by SKU (0 when the file gives none).
    pub stock: HashMap<Sku, i64>,
}

impl Catalog {
    /// The demo catalog.
    pub fn demo() -> Catalog {
        // The demo catalog is part of the source tree and covered by a test.
        Catalog::parse(DEMO_CATALOG).expect("the built-in demo catalog is valid")
    }

    /// Reads and validates a catalog file.
    pub fn load(path: &std::path::Path) -> Result<Catalog, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Catalog::parse(&text)
    }

    /// Validates catalog text, listing every problem.
    pub fn parse(text: &str) -> Result<Catalog, Vec<String>> {
        let root: Value = serde_json::from_str(text).map_err(|e| vec![format!("the file is not valid JSON: {e}")])?;
        let Some(entries) = root.get("products").and_then(Value::as_array) else {
            return Err(vec![
                "the file must be a JSON object with a \"products\" array".to_string(),
            ]);
        };
        if entries.is_empty() {
            return Err(vec!["the \"products\" array is empty".to_string()]);
        }
        let mut problems = Vec::new();
        let mut catalog = Catalog::default();
        let mut seen = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let at = |field: &str| format!("products[{index}].{field}");
            let text = |field: &str, problems: &mut Vec<String>| match entry.get(field).and_then(Value::as_str) {
                Some(value) => Some(value.to_string()),
                None => {
                    problems.push(format!("{} is missing or not a string", at(field)));
                    None
                }
            };
            let sku = text("sku", &mut problems).and_then(|s| {
                Sku::parse_catalog(&s)
                    .map_err(|why| problems.push(format!("{}: {why}", at("sku"))))
                    .ok()
            });
            if let Some(sku) = &sku
                && !seen.insert(sku.clone())
            {
                problems.push(format!("{}: SKU {sku} appears more than once", at("sku")));
            }
            let name = text("name", &mut problems).and_then(|name| {
                if name.trim().is_empty() || name.chars().count() > 256 {
                    problems.push(format!("{} must be 1 to 256 characters", at("name")));
                    None
                } else {
                    Some(name)
                }
            });
            let price = match entry.get("priceCents").and_then(Value::as_i64) {
                Some(cents) if (0..=MAX_PRICE_CENTS).contains(&cents) => Some(cents),
                _ => {
                    problems.push(format!(
                        "{} must be a whole number of cents from 0 to {MAX_PRICE_CENTS}",
                        at("priceCents")
                    ));
                    None
                }
            };
            let currency = text("currency", &mut problems).and_then(|c| {
                Currency::parse(&c)
                    .map_err(|why| problems.push(format!("{}: {why}", at("currency"))))
                    .ok()
            });
            let stock = match entry.get("stock") {
                None | Some(Value::Null) => Some(0),
                Some(value) => match value.as_i64() {
                    Some(units) if units >= 0 => Some(units),
                    _ => {
                        problems.push(format!("{} must be a whole number of units, 0 or more", at("stock")));
                        None
                    }
                },
            };
            if let (Some(sku), Some(name), Some(cents), Some(currency), Some(stock)) =
                (sku, name, price, currency, stock)
            {
                catalog.stock.insert(sku.clone(), stock);
                catalog.products.push(Product {
                    sku,
                    name,
                    price: Money { cents, currency },
                });
            }
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_has_the_documented_products() {
        let catalog = Catalog::demo();
        let find = |sku: &str| {
            let sku = Sku::parse(sku).expect("valid sku");
            let product = catalog.products.iter().find(|p| p.sku == sku).expect("present").clone();
            (
                product.price.cents,
                product.price.currency.to_string(),
                catalog.stock[&sku],
            )
        };
        assert_eq!(find("SKU-TSHIRT"), (2500, "USD".into(), 1_000_000));
        assert_eq!(find("SKU-MUG"), (1200, "USD".into(), 1_000_000));
        assert_eq!(find("SKU-LIMITED"), (9900, "USD".into(), 1));
        assert_eq!(find("SKU-SOLDOUT"), (500, "USD".into(), 0));
    }

    #[test]
    fn every_problem_in_a_file_is_listed() {
        let problems = Catalog::parse(
            r#"{"products": [
                {"sku": "A", "name": "ok", "priceCents": 1, "currency": "USD"},
                {"sku": "A", "name": "", "priceCents": -5, "currency": "usd", "stock": -1},
                {"name": "no sku", "priceCents": 1.5, "currency": "EUR"}
            ]}"#,
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        for expected in [
            "products[1].sku: SKU A appears more than once",
            "products[1].name",
            "products[1].priceCents",
            "products[1].currency",
            "products[1].stock",
            "products[2].sku is missing",
            "products[2].priceCents",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(Catalog::parse("[]").is_err());
        assert!(Catalog::parse("{\"products\": []}").is_err());
        assert!(Catalog::parse("not json").is_err());
    }
}
