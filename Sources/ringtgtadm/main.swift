print("ringtgtadm: not yet")
