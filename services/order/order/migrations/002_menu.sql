-- The menu. Prices live here and only here; clients send SKUs and quantities.
INSERT INTO products (sku, name, description, price) VALUES
    ('burger-classic',   'Classic burger',   'Beef, cheddar, pickles, house sauce',        8.50),
    ('burger-veggie',    'Veggie burger',    'Black bean patty, avocado, tomato',          9.00),
    ('pizza-margherita', 'Pizza margherita', 'Tomato, mozzarella, basil',                 11.00),
    ('salad-caesar',     'Caesar salad',     'Romaine, parmesan, croutons',                7.25),
    ('fries',            'Fries',            'Hand-cut, sea salt',                         3.50),
    ('lemonade',         'Lemonade',         'Fresh lemons, cane sugar',                   3.00),
    ('brownie',          'Brownie',          'Dark chocolate, walnuts',                    4.25),
    ('truffle-risotto',  'Truffle risotto',  'Made to order; the kitchen keeps only a few', 19.90)
ON CONFLICT (sku) DO NOTHING;
