"""The closed loop: from an alert to labels, a retrained challenger and a safe promotion, above the parts it drives."""
