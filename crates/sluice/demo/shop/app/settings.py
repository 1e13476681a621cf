"""What changes from one release of the demo shop to the next."""

# How long each page takes to prepare, in milliseconds.
WORK_MS = 20
# Whether a visitor who is not signed in can check out.
GUEST_CHECKOUT_WORKS = True
# How the checkout is laid out: what shoppers see before they order.
CHECKOUT = "three pages"
