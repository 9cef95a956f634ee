//! tug-netns: container networking through netlink.
