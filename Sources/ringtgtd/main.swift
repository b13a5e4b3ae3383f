print("ringtgtd: not yet")
