"""Team review in the dashboard: the session (session.py: store connection, sign-in gate, the Review
pages), the review panel of one item (panel.py), the review widgets other pages embed (controls.py), the
download callbacks (exports.py) and the Review pages themselves (views/). Storage and the joins with the
extraction database are in db/review/."""
