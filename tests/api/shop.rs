//! Products, carts and orders, on both databases.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    async fn the_catalog_lists_the_demo_products_without_a_token(backend) {
        let app = spawn_app(backend).await;
        let response = app.client.get(app.url("/api/products")).send().await.expect("request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        let skus: Vec<&str> = body["products"]
            .as_array()
            .expect("products")
            .iter()
            .map(|p| p["sku"].as_str().expect("sku"))
            .collect();
        for sku in ["SKU-TSHIRT", "SKU-MUG", "SKU-LIMITED", "SKU-SOLDOUT"] {
            assert!(skus.contains(&sku), "{sku} missing from {skus:?}");
        }
        let tshirt = body["products"].as_array().expect("products").iter().find(|p| p["sku"] == "SKU-TSHIRT");
        assert_eq!(
            tshirt,
            Some(&json!({"sku": "SKU-TSHIRT", "name": "Honest Errors T-Shirt", "priceCents": 2500, "currency": "USD"}))
        );
    }
);

on_both_backends!(
    async fn adding_an_item_twice_adds_to_its_line(backend) {
        let app = spawn_app(backend).await;
        let response = app.post("/api/carts", "usr_1", json!({})).await;
        assert_eq!(response.status(), 201);
        let cart: Value = response.json().await.expect("json");
        assert_eq!(cart["status"], "OPEN");
        assert_eq!(cart["userId"], "usr_1");
        assert_eq!(cart["items"], json!([]));
        assert_eq!(cart["totalCents"], 0);
        assert_eq!(cart["orderId"], Value::Null);
        let id = cart["cartId"].as_str().expect("cartId");
        let path = format!("/api/carts/{id}/items");
        app.post(&path, "usr_1", json!({"sku": "SKU-MUG", "quantity": 2})).await;
        app.post(&path, "usr_1", json!({"sku": "SKU-TSHIRT", "quantity": 1})).await;
        let response = app.post(&path, "usr_1", json!({"sku": "SKU-MUG", "quantity": 3})).await;
        assert_eq!(response.status(), 200);
        let cart: Value = response.json().await.expect("json");
        assert_eq!(
            cart["items"],
            json!([
                {"sku": "SKU-MUG", "quantity": 5, "priceCents": 1200},
                {"sku": "SKU-TSHIRT", "quantity": 1, "priceCents": 2500},
            ])
        );
        assert_eq!(cart["totalCents"], 5 * 1200 + 2500);
        assert_eq!(app.cart("usr_1", id).await, cart, "GET shows what POST returned");
    }
);

on_both_backends!(
    async fn a_line_cannot_exceed_a_thousand_units(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 999)]).await;
        let response = app
            .post(&format!("/api/carts/{cart}/items"), "usr_1", json!({"sku": "SKU-MUG", "quantity": 2}))
            .await;
        let (status, body) = status_and_body(response).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CART_LIMIT_EXCEEDED")));
        assert_eq!(app.cart("usr_1", &cart).await["items"][0]["quantity"], 999, "nothing changed");
    }
);

on_both_backends!(
    async fn a_cart_in_another_currency_refuses_usd_products(backend) {
        let app = spawn_app(backend).await;
        let response = app.post("/api/carts", "usr_1", json!({"currency": "EUR"})).await;
        let cart: Value = response.json().await.expect("json");
        assert_eq!(cart["currency"], "EUR");
        let id = cart["cartId"].as_str().expect("cartId");
        let response = app
            .post(&format!("/api/carts/{id}/items"), "usr_1", json!({"sku": "SKU-MUG", "quantity": 1}))
            .await;
        let (status, body) = status_and_body(response).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CURRENCY_MISMATCH")));
        assert!(body["message"].as_str().is_some_and(|m| m.contains("USD")), "{body}");
    }
);

on_both_backends!(
    async fn a_completed_cart_no_longer_takes_items(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[("SKU-MUG", 1)]).await;
        assert_eq!(app.checkout("usr_1", &cart, "tok_visa").await.status(), 201);
        let response = app
            .post(&format!("/api/carts/{cart}/items"), "usr_1", json!({"sku": "SKU-MUG", "quantity": 1}))
            .await;
        let (status, body) = status_and_body(response).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CART_NOT_OPEN")));
        assert_eq!(app.cart("usr_1", &cart).await["items"][0]["quantity"], 1);
    }
);

on_both_backends!(
    async fn an_order_shows_what_was_bought_and_when(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_1", &[("SKU-TSHIRT", 2), ("SKU-MUG", 1)]).await;
        let (status, receipt) = status_and_body(app.checkout("usr_1", &cart, "tok_visa").await).await;
        assert_eq!(status, 201);
        let order_id = receipt["orderId"].as_str().expect("orderId");
        let (status, order) = status_and_body(app.get(&format!("/api/orders/{order_id}"), "usr_1").await).await;
        assert_eq!(status, 200);
        assert_eq!(order["orderId"], order_id);
        assert_eq!(order["userId"], "usr_1");
        assert_eq!(order["cartId"], cart.as_str());
        assert_eq!(order["status"], "CONFIRMED");
        assert_eq!(order["transactionId"], receipt["transactionId"]);
        assert_eq!(order["totalCents"], 2 * 2500 + 1200);
        assert_eq!(order["currency"], "USD");
        assert_eq!(
            order["items"],
            json!([
                {"sku": "SKU-TSHIRT", "quantity": 2, "priceCents": 2500},
                {"sku": "SKU-MUG", "quantity": 1, "priceCents": 1200},
            ])
        );
        let created = order["createdAt"].as_str().expect("createdAt");
        let created_ms = checkout_service::clock::parse_rfc3339_ms(created).expect("RFC 3339");
        assert!((checkout_service::clock::Clock::system().now_ms() - created_ms).abs() < 60_000, "{created}");
        let cart = app.cart("usr_1", &cart).await;
        assert_eq!((cart["status"].as_str(), cart["orderId"].as_str()), (Some("COMPLETED"), Some(order_id)));
    }
);

/// `PUT` or `DELETE` on one line of `cart` as `user`.
async fn edit(
    app: &TestApp,
    method: reqwest::Method,
    user: &str,
    cart: &str,
    sku: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(&format!("/api/carts/{cart}/items/{sku}")))
        .bearer_auth(app.token(user));
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_body(request.send().await.expect("answered")).await
}

fn line<'a>(cart: &'a Value, sku: &str) -> Option<&'a Value> {
    cart["items"].as_array()?.iter().find(|item| item["sku"] == sku)
}

on_both_backends!(
    async fn a_line_can_be_set_to_a_quantity_or_removed(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_edit", &[("SKU-MUG", 1), ("SKU-TSHIRT", 2)]).await;
        let (status, body) = edit(&app, reqwest::Method::PUT, "usr_edit", &cart, "SKU-MUG", Some(json!({"quantity": 5}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(line(&body, "SKU-MUG").expect("the mug")["quantity"], 5, "set, not added: {body}");
        assert_eq!(body["totalCents"], 5 * 1200 + 2 * 2500);

        for bad in [json!({"quantity": 0}), json!({"quantity": 1001}), json!({"quantity": "2"})] {
            let (status, body) = edit(&app, reqwest::Method::PUT, "usr_edit", &cart, "SKU-MUG", Some(bad.clone())).await;
            assert_eq!((status, body["error"].as_str(), body["field"].as_str()), (400, Some("INVALID_FIELD"), Some("quantity")), "{bad}: {body}");
        }
        assert_eq!(line(&app.cart("usr_edit", &cart).await, "SKU-MUG").expect("mug")["quantity"], 5, "bad input changed nothing");

        let (status, body) = edit(&app, reqwest::Method::DELETE, "usr_edit", &cart, "SKU-MUG", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(line(&body, "SKU-MUG").is_none(), "{body}");
        assert_eq!(body["totalCents"], 2 * 2500);
        for method in [reqwest::Method::DELETE, reqwest::Method::PUT] {
            let body = (method == reqwest::Method::PUT).then(|| json!({"quantity": 1}));
            let (status, answer) = edit(&app, method, "usr_edit", &cart, "SKU-MUG", body).await;
            assert_eq!((status, answer["error"].as_str()), (404, Some("NOT_FOUND")), "an absent line: {answer}");
        }
    }
);

on_both_backends!(
    async fn editing_follows_the_same_owner_and_state_rules_as_adding(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_owner", &[("SKU-MUG", 1)]).await;
        let (status, body) = edit(&app, reqwest::Method::PUT, "usr_other", &cart, "SKU-MUG", Some(json!({"quantity": 3}))).await;
        assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
        let (status, body) = edit(&app, reqwest::Method::DELETE, "usr_other", &cart, "SKU-MUG", None).await;
        assert_eq!((status, body["error"].as_str()), (403, Some("FORBIDDEN")));
        let (status, _) = edit(&app, reqwest::Method::PUT, "usr_owner", "cart_nope", "SKU-MUG", Some(json!({"quantity": 3}))).await;
        assert_eq!(status, 404);

        assert_eq!(app.checkout("usr_owner", &cart, "tok_visa").await.status(), 201);
        let (status, body) = edit(&app, reqwest::Method::PUT, "usr_owner", &cart, "SKU-MUG", Some(json!({"quantity": 3}))).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CART_NOT_OPEN")), "{body}");
        let (status, body) = edit(&app, reqwest::Method::DELETE, "usr_owner", &cart, "SKU-MUG", None).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("CART_NOT_OPEN")), "{body}");
        assert_eq!(line(&app.cart("usr_owner", &cart).await, "SKU-MUG").expect("mug")["quantity"], 1);
    }
);

on_both_backends!(
    async fn a_sold_out_line_can_be_removed_and_the_rest_checked_out(backend) {
        let app = spawn_app(backend).await;
        let cart = app.cart_with("usr_soldout", &[("SKU-MUG", 1), ("SKU-SOLDOUT", 1)]).await;
        let (status, body) = status_and_body(app.checkout("usr_soldout", &cart, "tok_visa").await).await;
        assert_eq!((status, body["error"].as_str()), (409, Some("INVENTORY_CONFLICT")), "{body}");
        assert_eq!(body["unavailableSkus"], json!(["SKU-SOLDOUT"]));
        let (status, _) = edit(&app, reqwest::Method::DELETE, "usr_soldout", &cart, "SKU-SOLDOUT", None).await;
        assert_eq!(status, 200);
        let (status, order) = status_and_body(app.checkout("usr_soldout", &cart, "tok_visa").await).await;
        assert_eq!((status, order["totalCents"].as_i64()), (201, Some(1200)), "{order}");
    }
);
