"""piles"""
