import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "app"))

import shop  # noqa: E402

PRODUCTS = [{"sku": "tea", "price": 450}, {"sku": "mug", "price": 1200}]


class TotalTest(unittest.TestCase):
    def test_sums_prices_by_quantity(self):
        self.assertEqual(shop.total({"tea": 2, "mug": 1}, PRODUCTS), 2100)

    def test_an_empty_cart_costs_nothing(self):
        self.assertEqual(shop.total({}, PRODUCTS), 0)

    def test_a_signed_in_user_checks_out(self):
        receipt = shop.checkout("user-7", {"tea": 1}, PRODUCTS)
        self.assertEqual(receipt, {"owner": "user-7", "total": 450})


if __name__ == "__main__":
    unittest.main()
